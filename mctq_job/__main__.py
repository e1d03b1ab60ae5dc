from .cli import main

main(prog_name="mctq-job")
