"""`python -m dmat_core ...` is the same as `dmat ...`."""
from .cli import main

raise SystemExit(main())
