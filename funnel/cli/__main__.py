from funnel.cli import main

main(prog_name="funnel")
