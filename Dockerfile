# syntax=docker/dockerfile:1
# The nurture image: one image, every process. The command picks the role (DESIGN §5):
#   docker run IMAGE                     embedded default: `nurture run` (SQLite + outbox under /app/var)
#   docker run IMAGE scheduler|worker|web|db upgrade|validate ...   the scaled-out processes (docker-compose.yml)
# Configuration is NURTURE_* environment variables only (DESIGN §7); nothing secret is baked in.

ARG PYTHON_VERSION=3.11

# --- build: a wheel of the project plus wheels of its runtime dependencies (no dev extras) -----------------
FROM python:${PYTHON_VERSION}-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
# README.md* so the build works before the README exists (setuptools only warns when it is missing).
COPY pyproject.toml README.md* ./
COPY src/ src/
RUN python -m pip wheel --no-deps --wheel-dir /dist . \
 && python -m pip wheel --wheel-dir /wheels /dist/nurture-*.whl

# --- runtime: the installed wheel, marketing's files, and a non-root user ---------------------------------
FROM python:${PYTHON_VERSION}-slim AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

# Install only what the build stage resolved (--no-index); the wheels are mounted, so no layer keeps them.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python -m pip install --no-index --find-links=/wheels nurture

RUN groupadd --system --gid 10001 nurture \
 && useradd --system --uid 10001 --gid nurture --home-dir /app --no-create-home --shell /usr/sbin/nologin nurture

WORKDIR /app
# Campaigns, templates and reps are config: owned by root so the service can read but never rewrite them.
# The defaults NURTURE_CAMPAIGNS_DIR=campaigns, NURTURE_TEMPLATES_DIR=templates, NURTURE_REPS_FILE=reps.yaml
# resolve against this working directory. scoring.yaml* is copied when the repository has one.
COPY campaigns/ campaigns/
COPY templates/ templates/
COPY reps.yaml scoring.yaml ./
# The embedded default writes its SQLite file, outbox and generated secret under ./var (NURTURE_DATA_DIR).
RUN mkdir -p /app/var && chown nurture:nurture /app/var

USER nurture:nurture
EXPOSE 8000
# No HEALTHCHECK here: only `nurture web` serves /healthz, and the same image also runs the scheduler and
# workers, which have no port. docker-compose.yml gives the web service its own healthcheck.
ENTRYPOINT ["nurture"]
CMD ["run", "--host", "0.0.0.0"]
