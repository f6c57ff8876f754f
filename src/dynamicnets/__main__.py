"""`python -m dynamicnets ...` (also what `torchrun -m dynamicnets train ...` runs)."""
from .cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
