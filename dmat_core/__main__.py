"""`python -m dmat_core ...` is the same as `dmat ...`."""
from .cli.main import main

raise SystemExit(main())
