from virtfleet.cli.main import main

main()
