from edxlive.service.cli import main

main()
