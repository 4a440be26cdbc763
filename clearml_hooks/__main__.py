from clearml_hooks.cli import main

main()
