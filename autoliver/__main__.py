from autoliver.cli import main

raise SystemExit(main())
