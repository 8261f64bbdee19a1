"""Entry point for ``python -m xaiclip_cli``."""

from xaiclip_cli.cli.main import main

if __name__ == "__main__":
    main()
