# The action's image. .github/workflows/release.yml builds it for amd64
# and arm64 and pushes ghcr.io/wardnet/inforge-action:<version>, the tag
# action.yml names, so no workflow run builds it; self-test.yml builds it
# from here. GitHub runs it as root with the workspace as the working
# directory, so nothing below sets USER or relies on WORKDIR.
FROM python:3.12.11-slim-bookworm

# The source label links the ghcr.io package to its repository.
LABEL org.opencontainers.image.source="https://github.com/wardnet/inforge-action" \
      org.opencontainers.image.description="Ship services to plain Linux VMs"

# Log lines reach the runner as they are printed. The image ships its
# bytecode compiled; a run writes none into its throwaway container.
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

# git fetches the platform repo and pushes the manifest commit. SSH goes
# through paramiko, so no openssh-client.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates git \
 && rm -rf /var/lib/apt/lists/*

# Dependencies before the code, so a code change reuses this layer. Each
# file must match a hash in the lock, and only wheels are accepted: a
# missing wheel fails the build instead of compiling from source.
COPY requirements.lock /app/requirements.lock
RUN pip install --no-cache-dir --disable-pip-version-check \
        --require-hashes --no-deps --only-binary=:all: \
        -r /app/requirements.lock

COPY inforge_action /app/inforge_action
COPY entrypoint.py /app/entrypoint.py

# A module that cannot import fails this build, not a user's deploy;
# --help alone would not notice, as it imports only the CLI.
RUN python -m compileall -q /app/inforge_action \
 && python /app/entrypoint.py --help >/dev/null \
 && cd /app \
 && python -c "import importlib, pkgutil, inforge_action as p; \
[importlib.import_module(m.name) for m in pkgutil.walk_packages( \
p.__path__, 'inforge_action.') if not m.name.endswith('__main__')]"

ENTRYPOINT ["/usr/local/bin/python", "/app/entrypoint.py"]
