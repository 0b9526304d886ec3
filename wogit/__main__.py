from wogit.cli import main

raise SystemExit(main())
