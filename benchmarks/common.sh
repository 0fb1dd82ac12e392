# Sourced by the benchmark scripts: `run ARGS...` runs `lte ARGS... --no-progress`, logging the command and its
# wall time to $out/commands.txt.
run() {
  local start=$SECONDS
  echo "+ lte $*" | tee -a "$out/commands.txt"
  lte "$@" --no-progress
  echo "  ($((SECONDS - start)) s)" | tee -a "$out/commands.txt"
}
