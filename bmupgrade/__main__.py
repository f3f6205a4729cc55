from bmupgrade.entry import main

main()
