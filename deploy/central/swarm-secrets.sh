#!/usr/bin/env bash
# Prepare a Docker Swarm for deploy/central/stack.yml: the federation's keys and one-time tokens as Docker
# secrets, and which machine runs which service.
#
#   deploy/central/swarm-secrets.sh KEY_FOLDER    # on a manager, once, before the first `docker stack deploy`
#   deploy/central/swarm-secrets.sh --remove      # after `docker stack rm`: delete those secrets and labels
#
# 1. Runs `hfl provision` (in the hfl image, without network) into KEY_FOLDER: the federation's
#    certificate authority, the authority's signing key, and a one-time token for the leader, each fog and
#    each validator. KEY_FOLDER/for-sites/ gets what every hospital needs: ca.pem and authority-key.pub.
# 2. Creates one Docker secret per file (hfl-ca.key, hfl-token-fog-1, ...); each service sees only its own.
# 3. Labels this machine for every service that no machine is labelled for yet (hfl.authority=true, ...).
#
# Running it again with the same KEY_FOLDER changes nothing. KEY_FOLDER holds the only copy of the CA key
# outside the swarm: keep it offline as a backup (or delete it). Settings: HFL_IMAGE (default hfl:latest).
set -euo pipefail

IMAGE="${HFL_IMAGE:-hfl:latest}"
VALIDATORS=(validator-1 validator-2 validator-3 validator-4 validator-5 validator-6 validator-7)
FIXED=(leader fog-1 fog-2 "${VALIDATORS[@]}")
SERVICES=(authority "${FIXED[@]}")

say() { printf '%s\n' "$*"; }
fail() { printf 'swarm-secrets: %s\n' "$*" >&2; exit 1; }

usage() {
    sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
}

[[ $# -eq 1 && "$1" != -h && "$1" != --help ]] || usage
command -v docker >/dev/null || fail "docker is not installed or not on PATH."
state=$(docker info --format '{{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}}' 2>/dev/null) \
    || fail "cannot talk to the Docker engine (is it running, and may this user use it?)."
case "$state" in
    "active true") ;;
    active*) fail "this machine is in a swarm but not a manager; run this on a manager (docker node ls there)." ;;
    *) fail "this machine is not in an active Docker Swarm. Start one with 'docker swarm init' (or join one), then run this again." ;;
esac

labelled() {  # the hfl.<service> labels any node carries, one per line
    docker node ls -q | xargs docker node inspect \
        --format '{{range $k, $v := .Spec.Labels}}{{$k}}{{"\n"}}{{end}}' | grep '^hfl\.' || true
}

if [[ "$1" == "--remove" ]]; then
    for id in $(docker secret ls -q --filter label=org.hfl.central); do
        name=$(docker secret inspect --format '{{.Spec.Name}}' "$id")
        docker secret rm "$id" >/dev/null 2>&1 \
            || fail "the secret $name is still used by a service; stop the stack first (docker stack rm NAME)."
        say "removed the secret $name"
    done
    for node in $(docker node ls -q); do
        for s in "${SERVICES[@]}"; do
            if docker node inspect --format "{{index .Spec.Labels \"hfl.$s\"}}" "$node" | grep -q .; then
                docker node update --label-rm "hfl.$s" "$node" >/dev/null
                say "removed the label hfl.$s from $(docker node inspect --format '{{.Description.Hostname}}' "$node")"
            fi
        done
    done
    say "Done. The state volumes (*-state) stay on their machines; 'docker volume rm' deletes them for good."
    exit 0
fi

docker image inspect "$IMAGE" >/dev/null 2>&1 \
    || fail "the image $IMAGE is not on this machine; build it (make image) or load it (docker load -i hfl.tar)."
mkdir -p "$1"
chmod 700 "$1"
keys=$(cd "$1" && pwd)

# 1. provision (idempotent: an existing certificate authority and unused tokens are kept)
nodes=(--node leader:leader=/provision/leader --node fog:fog-1=/provision/fog-1 --node fog:fog-2=/provision/fog-2)
for v in "${VALIDATORS[@]}"; do nodes+=(--node "validator:$v=/provision/$v"); done
say "Making the federation's keys and one-time tokens in $keys ..."
docker run --rm --network none --user 0:0 -v "$keys:/provision" "$IMAGE" \
    provision --owner "$(id -u):$(id -g)" --authority-state /provision/authority "${nodes[@]}" \
    | sed 's/^/  /'
mkdir -p "$keys/for-sites"
cp "$keys/authority/ca/ca.pem" "$keys/leader/tls/authority-key.pub" "$keys/for-sites/"

# 2. secrets: created once; a secret of the same name made from other files is refused, not replaced
secret() {  # NAME FILE
    local sum old
    sum=$(sha256sum "$2" | cut -d' ' -f1)
    if old=$(docker secret inspect --format '{{index .Spec.Labels "org.hfl.sha256"}}' "$1" 2>/dev/null); then
        [[ "$old" == "$sum" ]] || fail "a secret $1 already exists, made from other files than $keys. \
If it belongs to an old federation: docker stack rm it, run '$0 --remove', then run this again."
        say "  $1: already there"
    else
        docker secret create --label org.hfl.central=1 --label "org.hfl.sha256=$sum" "$1" "$2" >/dev/null
        say "  $1: created"
    fi
}
say "Creating the Docker secrets ..."
secret hfl-ca.pem "$keys/authority/ca/ca.pem"
secret hfl-ca.key "$keys/authority/ca/ca.key"
secret hfl-authority-identity.key "$keys/authority/identity.key"
secret hfl-enrol-tokens.json "$keys/authority/enrol_tokens.json"
secret hfl-authority-key.pub "$keys/leader/tls/authority-key.pub"
for n in "${FIXED[@]}"; do secret "hfl-token-$n" "$keys/$n/tls/enrol-token"; done

# 3. placement: services nobody placed yet run on this machine
self=$(docker info --format '{{.Swarm.NodeID}}')
have=$(labelled)
add=()
for s in "${SERVICES[@]}"; do grep -qx "hfl\.$s" <<<"$have" || add+=(--label-add "hfl.$s=true"); done
if [[ ${#add[@]} -gt 0 ]]; then
    docker node update "${add[@]}" "$self" >/dev/null
    say "This machine ($(hostname)) will run: $(printf '%s ' "${add[@]}" | sed 's/--label-add hfl\.\([^=]*\)=true/\1/g')"
fi
say "Ready. Deploy with:  HFL_PUBLIC_HOST=<name hospitals reach this machine by> docker stack deploy -c deploy/central/stack.yml hfl"
say "Give every hospital $keys/for-sites/ca.pem and authority-key.pub, and its own token (hfl token SITE-NAME)."
