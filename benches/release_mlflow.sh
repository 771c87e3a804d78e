#!/usr/bin/env bash
# Release of the demo model (tests/fixtures/models/churn_rf.onnx) through a real MLflow:
# `release create` from a file, `release publish` into MLflow's artifact store and
# `verify` from it, each against the raw transfer of the same files in the same run
# (one curl process PUTting / GETting every published file in turn over one
# connection, on the same server).
#   bash benches/release_mlflow.sh      (after tools/ci/provision-mlflow.sh and a build)
# Prints one line per step; best of $ROUNDS (default 5).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
exe="$repo/target/${PROFILE:-debug}/edgeinfer"
venv="$repo/.cache/venv-mlflow"
rounds="${ROUNDS:-5}"
# mlflow 3.17 usage telemetry races on os.environ (KeyError) and may not phone home here.
export MLFLOW_DISABLE_TELEMETRY=true
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$repo/.cache/ort/libonnxruntime.so.1.31.1}"
[[ -x $exe && -x $venv/bin/mlflow ]] || { echo "build edgeinfer and run tools/ci/provision-mlflow.sh first" >&2; exit 1; }
tmp="$(mktemp -d)"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
setsid "$venv/bin/mlflow" server --host 127.0.0.1 --port "$port" --backend-store-uri "sqlite:///$tmp/db" \
  --artifacts-destination "$tmp/art" --workers 1 >"$tmp/mlflow.log" 2>&1 &
pgid=$!
trap 'kill -TERM -- -$pgid 2>/dev/null; sleep 1; kill -KILL -- -$pgid 2>/dev/null; rm -rf "$tmp"' EXIT
for _ in $(seq 480); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.25; done
url="http://127.0.0.1:$port"
api="$url/api/2.0/mlflow-artifacts/artifacts"

python3 - "$repo/tests/fixtures/golden/churn_rf.json" >"$tmp/ref.csv" <<'PY'
import json, sys
x = json.load(open(sys.argv[1]))["inputs"][0]; n, w = x["shape"]; d = x["data"]
print(",".join(f"f{i}" for i in range(w)))
for r in range(n): print(",".join(repr(v) for v in d[r*w:(r+1)*w]))
PY
for k in root targets snapshot timestamp; do "$exe" keys gen --out "$tmp/keys" --name $k >/dev/null; done
keys=(--key "$tmp/keys/root.key.json" --key "$tmp/keys/targets.key.json" --key "$tmp/keys/snapshot.key.json" --key "$tmp/keys/timestamp.key.json")

best() { sort -n | head -1; }
now() { date +%s.%N; }
create=() publish=() put=() verify=() get=()
for i in $(seq "$rounds"); do
  w="$tmp/work$i"
  "$exe" repo init --dir "$w" --root-key "$tmp/keys/root.pub.json" --targets-key "$tmp/keys/targets.pub.json" \
    --snapshot-key "$tmp/keys/snapshot.pub.json" --timestamp-key "$tmp/keys/timestamp.pub.json" >/dev/null
  t0=$(now)
  "$exe" release create --dir "$w" --model "$repo/tests/fixtures/models/churn_rf.onnx" --name churn --version 1 \
    --reference-data "$tmp/ref.csv" >/dev/null 2>&1
  t1=$(now); create+=("$(echo "$t1 - $t0" | bc)")
  "$exe" release sign --dir "$w" "${keys[@]}" >/dev/null 2>&1
  t0=$(now); "$exe" release publish --dir "$w" --repo "mlflow+$url/bench$i" >/dev/null; t1=$(now)
  publish+=("$(echo "$t1 - $t0" | bc)")
  files=$(cd "$w" && find metadata targets -type f -not -name '.*' | sort)
  bytes=$(cd "$w" && cat $files | wc -c)
  up=(); down=()
  for f in $files; do up+=(-T "$w/$f" "$api/raw$i/$f"); down+=("$api/raw$i/$f" -o /dev/null); done
  t0=$(now); curl -sf "${up[@]}" >/dev/null; t1=$(now)
  put+=("$(echo "$t1 - $t0" | bc)")
  t0=$(now); "$exe" verify --repo "mlflow+$url/bench$i" --root "$w/metadata/1.root.json" >/dev/null; t1=$(now)
  verify+=("$(echo "$t1 - $t0" | bc)")
  t0=$(now); curl -sf "${down[@]}"; t1=$(now)
  get+=("$(echo "$t1 - $t0" | bc)")
done
b() { printf '%s\n' "$@" | best; }
printf 'files %s, %s bytes (model %s bytes)\n' "$(echo $files | wc -w)" "$bytes" "$(stat -c %s "$repo/tests/fixtures/models/churn_rf.onnx")"
printf 'release create (engine load, golden, reference stats): %.3f s\n' "$(b "${create[@]}")"
printf 'release publish into MLflow: %.3f s   raw curl PUT of the same files: %.3f s   ratio %.2f\n' \
  "$(b "${publish[@]}")" "$(b "${put[@]}")" "$(echo "$(b "${publish[@]}") / $(b "${put[@]}")" | bc -l)"
printf 'verify from MLflow (fresh box: all metadata + targets, hashed): %.3f s   raw curl GET: %.3f s   ratio %.2f\n' \
  "$(b "${verify[@]}")" "$(b "${get[@]}")" "$(echo "$(b "${verify[@]}") / $(b "${get[@]}")" | bc -l)"
