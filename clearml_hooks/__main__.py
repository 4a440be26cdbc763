from clearml_hooks.launch.entry import main

main()
