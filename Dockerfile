# tinygpt-serve: the HTTP service with the shipped checkpoints baked in.
#   docker build -t tinygpt-serve .                       CPU PyTorch (the default)
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu130 \
#                -t tinygpt-serve:cuda .                  a CUDA build (docker-compose.gpu.yml)
# Only classic-builder syntax (no RUN --mount, no heredocs): docker-compose v1 builds
# without BuildKit.

FROM python:3.11-slim AS builder

# Where the torch wheel comes from. It is an *extra* index beside PyPI, for two reasons:
# - PyTorch's index labels its builds (2.13.0+cpu, 2.13.0+cu130) and a labelled version sorts
#   above PyPI's plain 2.13.0, so pip takes the build from this index whenever it can reach it;
# - pip skips an index it cannot reach, with a warning, instead of failing. On a machine that
#   reaches PyPI only, the torch wheel then comes from pip's configured find-links (the
#   offline stand-in base image ships the CPU wheel that way).
# The check after the install refuses a plain version: on Linux that is PyPI's CUDA build,
# gigabytes the CPU image must not silently ship when this index is unreachable.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv

WORKDIR /src
# The dependency layers depend on pyproject.toml alone, so editing the code reuses them.
COPY pyproject.toml README.md ./
# The torch pin stays in pyproject.toml; split it from the other dependencies so that only
# the torch install consults TORCH_INDEX_URL.
RUN python -c "import re, tomllib; deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; \
is_torch = lambda d: re.split(r'[^A-Za-z0-9_.-]', d)[0] == 'torch'; \
open('torch.txt', 'w').write('\n'.join(filter(is_torch, deps))); \
open('requirements.txt', 'w').write('\n'.join(deps))"
# --no-deps: torch's own dependencies come from PyPI in the next step, so the extra index
# is asked about torch alone.
RUN pip install --no-deps --extra-index-url "$TORCH_INDEX_URL" -r torch.txt \
 && python -c "import sys; from importlib.metadata import version; v = version('torch'); \
sys.exit(0 if '+' in v else f'torch {v} came from PyPI, not from {sys.argv[1]}')" "$TORCH_INDEX_URL"
# torch is pinned in requirements.txt too and the installed build satisfies the pin, so pip
# keeps it and adds its dependencies.
RUN pip install -r requirements.txt
# Serving and training need none of this: the packages' test suites, torch's C++ test
# binaries and protoc. torch/include stays: torch.compile builds the decode step against it.
# torch_shm_manager stays: multiprocessing tensors use it.
RUN cd /opt/venv/lib/python3.11/site-packages \
 && rm -rf torch/test torch/bin/test_* torch/bin/*Test torch/bin/protoc* \
 && find . -depth -type d -name tests -exec rm -rf {} +

COPY models ./models
COPY service ./service
RUN pip install --no-deps .


FROM python:3.11-slim

# Written straight into /etc/passwd and /etc/group: minimal Debian bases (the offline stand-in
# among them) lack useradd.
RUN echo 'tinygpt:x:10001:' >> /etc/group \
 && echo 'tinygpt:x:10001:10001::/app:/usr/sbin/nologin' >> /etc/passwd

# The fast decode path: on CPU torch.compile writes C++ and builds it with g++ against
# Python's headers (the official slim image has them; Debian's python3-dev where it lacks
# them). Compiled, one stream decodes about 3x faster; see the README's "Docker" section.
RUN apt-get update \
 && apt-get install -y --no-install-recommends g++ \
 && (python -c "import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()['include'], 'Python.h')))" \
     || apt-get install -y --no-install-recommends python3-dev) \
 && rm -rf /var/lib/apt/lists/*

COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
# Owned by the service user so that the trainer can write new checkpoints into a volume
# mounted here (Docker seeds an empty named volume with this folder, ownership included).
COPY --chown=tinygpt:tinygpt checkpoints /app/checkpoints
# Inductor's compiled graphs (and prepared datasets) are cached here: a restarted container
# compiles in seconds. Mount a volume here to keep them across new containers too.
RUN mkdir -p /var/cache/tinygpt && chown tinygpt:tinygpt /var/cache/tinygpt

# The server's defaults suit a workstation (127.0.0.1); in a container it must listen on
# every interface for the published port to reach it. The venv is compiled already and
# read-only to the service user, so Python need not try to write bytecode. Matplotlib (the
# trainer's plots) wants a writable config folder; the home folder is not one.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    TINYGPT_HOST=0.0.0.0 \
    TINYGPT_PORT=8000 \
    TINYGPT_CHECKPOINTS=/app/checkpoints \
    TINYGPT_CACHE=/var/cache/tinygpt

USER tinygpt
EXPOSE 8000
# /health answers once the models are loaded and the server accepts requests. Python's
# urllib, because the slim image has no curl.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ['TINYGPT_PORT']}/health\", timeout=4)"]
CMD ["tinygpt", "serve"]
