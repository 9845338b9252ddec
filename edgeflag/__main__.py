from edgeflag.cli import main

raise SystemExit(main())
