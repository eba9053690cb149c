#!/bin/sh
# Entry point for the Bytewax helm chart (and so `waxctl dataflow deploy`) with this image: the
# chart runs `sh ./entrypoint.sh` in the image's working directory, with the python file it
# deployed in BYTEWAX_PYTHON_FILE_PATH (e.g. /var/bytewax/main_flow.py) and the process id,
# hostfile and recovery settings in BYTEWAX_* variables that `python -m bytewax.run` reads.
set -eu
: "${BYTEWAX_PYTHON_FILE_PATH:?BYTEWAX_PYTHON_FILE_PATH is not set}"
cd "${BYTEWAX_WORKDIR:-/app}"
if [ "${BYTEWAX_KEEP_CONTAINER_ALIVE:-false}" = true ]; then
  # Debugging aid of the chart: keep the container up after the flow ends.
  python -m bytewax.run "$BYTEWAX_PYTHON_FILE_PATH" || echo "dataflow exited with $?"
  echo 'Process ended; keeping the container alive.'
  while :; do sleep 3600; done
fi
# tini forwards SIGTERM to the flow (a bare PID 1 would ignore it) and reaps children.
exec tini -s -- python -m bytewax.run "$BYTEWAX_PYTHON_FILE_PATH"
