#!/usr/bin/env python3
"""Container entrypoint: the mctq-job command line."""

from mctq_job.cli import main

if __name__ == "__main__":
    main(prog_name="mctq-job")
