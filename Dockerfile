# t2i-align on NVIDIA GPUs: a cargo build, then a CUDA runtime image with onnxruntime-gpu from PyPI.
# No Docker engine runs on the development machines, so this file is kept correct by review, not by a build.
#
#   docker build -t t2i-align .
#   docker run --gpus all -p 8080:8080 -v /path/to/sd15-onnx:/model t2i-align serve --device cuda
#
# The `trainer` target is the same image plus trainer/ and a venv with its requirements (torch with CUDA),
# for the fine-tune jobs the service runs as child processes:
#
#   docker build --target trainer -t t2i-align-trainer .
#
# `docker build .` builds the last stage, `serve`, which is the `runtime` stage unchanged.
#

# The web console (web/): built with node here, embedded into the binary by build.rs below.
FROM node:20-bookworm AS web
WORKDIR /web
COPY web/package.json web/package-lock.json web/.npmrc ./
RUN npm ci --no-audit --no-fund
COPY web ./
RUN npm run build

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock rustfmt.toml build.rs ./
COPY src ./src
COPY --from=web /web/dist ./web/dist
RUN cargo build --release --locked --bin t2i-align

# onnxruntime-gpu 1.31.1 is built for CUDA 13 and cuDNN 9; its [cuda,cudnn] extras bring those runtime libraries
# as wheels, so the base image only needs the driver interface.
FROM nvidia/cuda:13.0.0-base-ubuntu24.04 AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/ort \
 && /opt/ort/bin/pip install --no-cache-dir "onnxruntime-gpu[cuda,cudnn]==1.31.1"
# The CUDA execution provider finds libcudart, cuBLAS and cuDNN through the nvidia-* wheels' lib folders.
RUN ldconfig_dirs=$(find /opt/ort/lib -path '*nvidia/*/lib' -type d | tr '\n' ':') \
 && echo "export LD_LIBRARY_PATH=${ldconfig_dirs}" > /etc/profile.d/nvidia-wheels.sh \
 && find /opt/ort/lib -path '*nvidia/*/lib' -type d > /etc/ld.so.conf.d/nvidia-wheels.conf \
 && ldconfig
# Keys are required (T2I_REQUIRE_AUTH): give a bootstrap admin key in T2I_API_KEYS (`ops:admin:<secret>`), or make
# one in the data directory's database first with `docker run ... t2i-align keys create --name ops --scopes admin`.
ENV ORT_DYLIB_PATH=/opt/ort/lib/python3.12/site-packages/onnxruntime/capi/libonnxruntime.so.1.31.1 \
    T2I_MODEL=/model \
    T2I_HOST=0.0.0.0 \
    T2I_PORT=8080 \
    T2I_REQUIRE_AUTH=true \
    T2I_DEVICE=cuda \
    T2I_NO_REWARD_MODEL=true
COPY --from=build /src/target/release/t2i-align /usr/local/bin/t2i-align
EXPOSE 8080
VOLUME ["/model"]
ENTRYPOINT ["t2i-align"]
CMD ["serve"]

# The service and the trainer. torch comes from PyPI's default Linux x86_64 wheel, which bundles CUDA (13.x, as
# nvidia-* wheels) and also runs on CPU. Ubuntu 24.04's python3 is 3.12; every pin in requirements.txt has a
# cp312 (or pure-Python) wheel. torch finds its own CUDA libraries through its RPATH, ahead of the
# onnxruntime-gpu ones registered with ldconfig above.
FROM runtime AS trainer
COPY trainer/requirements.txt /app/trainer/requirements.txt
RUN python3 -m venv /opt/trainer-venv \
 && /opt/trainer-venv/bin/pip install --no-cache-dir -r /app/trainer/requirements.txt
COPY trainer /app/trainer
# Read by the server as the defaults of --trainer-python and --trainer-dir.
ENV T2I_TRAINER_PYTHON=/opt/trainer-venv/bin/python \
    T2I_TRAINER_DIR=/app/trainer

# The default target (`docker build .` builds the last stage): the serving image, as before. BuildKit skips the
# trainer stage for it; the legacy builder builds that stage too but still tags this one.
FROM runtime AS serve
