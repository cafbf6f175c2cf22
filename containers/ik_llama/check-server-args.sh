#!/bin/sh
# check-server-args.sh LLAMA_SERVER < lines
# Each input line is one shell-quoted llama-server argument list that a profile renders (the
# SERVER_ARGS build arg, from gh200's renderer). The real binary parses each with --help appended:
# an accepted list behaves exactly like a bare --help (same exit status, same output, since the
# parser stops at --help after taking every flag and value before it), a refused one prints its
# parser's complaint first ("error: unknown argument: --metrcs", "legacy speculative option ...").
# Nothing is loaded or listened on. Used by the ik_llama image build and the llama.cpp image test.
set -u
server="$1"
expected="$("$server" --help </dev/null 2>&1)"
expected_rc=$?
checked=0
failed=0
while IFS= read -r line; do
  [ -n "$line" ] || continue
  checked=$((checked + 1))
  eval "set -- $line"
  got="$("$server" "$@" --help </dev/null 2>&1)"
  rc=$?
  if [ "$rc" -eq "$expected_rc" ] && [ "$got" = "$expected" ]; then
    echo "llama-server takes: $line"
  else
    echo "error: llama-server refuses: $line"
    # The complaint is what differs from the bare --help output.
    printf '%s\n' "$got" | grep -vxF -e "$expected" | head -5 | sed 's/^/  /'
    failed=1
  fi
done
if [ "$checked" -eq 0 ]; then
  echo "error: no argument lines to check (SERVER_ARGS is empty)"
  exit 1
fi
exit "$failed"
