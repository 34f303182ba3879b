"""The `taylorcli` command (also `python -m taylorcli`): stop signals first, then the CLI."""


def main() -> None:
    """Record SIGTERM/SIGUSR1 before anything slow is imported, then run the command line."""
    from .run import signals, startup  # import nothing but the standard library

    startup.mark_launch()
    signals.install(watchdog=True)
    from .cli import console_main

    console_main()


if __name__ == "__main__":
    main()
