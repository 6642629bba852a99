from prunesearch.cli import main

main()
