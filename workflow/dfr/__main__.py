from dfr.cli import entry

entry()
