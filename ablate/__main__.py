"""`python -m ablate …`: the `ablate` command without the console script (e.g. from a checkout or a worktree)."""

from ablate.cli.main import main

raise SystemExit(main())
