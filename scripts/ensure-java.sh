#!/usr/bin/env bash
# Make sure a Java runtime >= 17 is available for the KCL MultiLangDaemon; install Debian's if we can.
set -euo pipefail

java_major() {
  local bin=$1
  "$bin" -version 2>&1 | awk -F'"' '/version/ {split($2, v, "."); print (v[1] == "1" ? v[2] : v[1]); exit}'
}

# The worker's own order (consumer.kcl_worker.find_java): CLICKSTREAM_JAVA, then JAVA_HOME, then the PATH.
named_by=
candidate=${CLICKSTREAM_JAVA:-}
if [[ -n "$candidate" ]]; then
  named_by=CLICKSTREAM_JAVA
  # a bare name (java17) is looked up on the PATH, as the worker does
  if [[ "$candidate" != */* ]]; then candidate=$(command -v "$candidate" || echo "$candidate"); fi
elif [[ -n "${JAVA_HOME:-}" ]]; then candidate=$JAVA_HOME/bin/java; named_by=JAVA_HOME
else candidate=$(command -v java || true); fi

if [[ -n "$candidate" ]]; then
  if [[ -x "$candidate" ]]; then major=$(java_major "$candidate" || true); else major=; fi
  if [[ "${major:-0}" -ge 17 ]]; then exit 0; fi
  if [[ -n "$named_by" ]]; then
    # Installing another Java would not help: the worker runs the one the variable names.
    found=${major:+Java $major}
    echo "$named_by names $candidate (${found:-not an executable java}); the KCL needs Java 17 or newer:" \
      "point $named_by at one, or unset it" >&2
    exit 1
  fi
  echo "found $candidate but it is Java ${major:-unknown}; the KCL needs Java 17 or newer" >&2
fi

if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
  echo "installing openjdk-17-jre-headless (the KCL MultiLangDaemon needs a JRE 17+) ..." >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq openjdk-17-jre-headless >/dev/null
  # asked again: the PATH's java stays an older one where the alternatives were set by hand
  installed=$(command -v java || true)
  if [[ -n "$installed" ]]; then major=$(java_major "$installed" || true); else major=; fi
  if [[ "${major:-0}" -ge 17 ]]; then exit 0; fi
  echo "installed openjdk-17-jre-headless, but the java on the PATH (${installed:-none}) is Java ${major:-unknown}:" \
    "select Java 17 with 'update-alternatives --config java', or point CLICKSTREAM_JAVA at its java" >&2
  exit 1
fi

cat >&2 <<'MSG'
A Java runtime 17 or newer is required (the Kinesis Client Library runs on the JVM).
Install it, e.g.:  sudo apt-get install openjdk-17-jre-headless
or point CLICKSTREAM_JAVA (or JAVA_HOME) at an existing java 17+.
MSG
exit 1
