from mlserve.cli import main

raise SystemExit(main())
