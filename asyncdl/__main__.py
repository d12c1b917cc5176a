from asyncdl._cli import main

raise SystemExit(main())
