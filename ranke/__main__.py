from ranke.cli import main

raise SystemExit(main())
