from tunelens.cli import main

main()
