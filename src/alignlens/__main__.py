"""`python -m alignlens ...` and `torchrun --nproc_per_node=N -m alignlens ...`: the `alignlens` command."""

from alignlens.cli.main import main

if __name__ == "__main__":
    main()
