"""The `imsg` command. Rules every command follows:

- data goes to stdout; everything else (progress, warnings, errors) to stderr with a
  prefix: `error:` then `hint:` lines, `warning:` for what does not stop the command;
- `--json` makes stdout machine-readable: one JSON object per line (NDJSON), and an
  error is also one JSON object on stderr: {"error": "<code>", "message": "..."};
- exit codes are stable (imsg_cli.errors): 0 ok, 1 bug, 2 usage, 3 local state,
  4 relay unreachable, 5 relay refused, 6 security failure, 130 interrupted;
- modules import the client inside commands, so `imsg --help` stays fast.
"""
