from vinspect.cli import main

main()
