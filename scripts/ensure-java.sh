#!/usr/bin/env bash
# Make sure a Java runtime >= 17 is available for the KCL MultiLangDaemon; install Debian's if we can.
set -euo pipefail

java_major() {
  local bin=$1
  "$bin" -version 2>&1 | awk -F'"' '/version/ {split($2, v, "."); print (v[1] == "1" ? v[2] : v[1]); exit}'
}

candidate=${CLICKSTREAM_JAVA:-}
if [[ -z "$candidate" && -n "${JAVA_HOME:-}" && -x "$JAVA_HOME/bin/java" ]]; then candidate=$JAVA_HOME/bin/java; fi
if [[ -z "$candidate" ]]; then candidate=$(command -v java || true); fi

if [[ -n "$candidate" ]]; then
  major=$(java_major "$candidate" || echo 0)
  if [[ "${major:-0}" -ge 17 ]]; then exit 0; fi
  echo "found $candidate but it is Java ${major:-unknown}; the KCL needs Java 17 or newer" >&2
fi

if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
  echo "installing openjdk-17-jre-headless (the KCL MultiLangDaemon needs a JRE 17+) ..." >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq openjdk-17-jre-headless >/dev/null
  exit 0
fi

cat >&2 <<'MSG'
A Java runtime 17 or newer is required (the Kinesis Client Library runs on the JVM).
Install it, e.g.:  sudo apt-get install openjdk-17-jre-headless
or point CLICKSTREAM_JAVA (or JAVA_HOME) at an existing java 17+.
MSG
exit 1
