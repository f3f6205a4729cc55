"""Everything a person sees or answers: the only place rich and questionary are imported.

`report` (live output, the final summary, JSON events), `prompts` (questionary questions at a
terminal), `planview` (plan as text, Markdown, JSON), `status` (a run's journal, the cluster's
markers). The engine never imports this package: it speaks `bmupgrade.outcome`.
"""
