from bmupgrade.cli import main

main()
