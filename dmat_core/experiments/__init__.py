"""Experiments: the demo and the studies, each with an argparse front end wired into `dmat`."""
