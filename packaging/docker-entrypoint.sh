#!/bin/sh
# The container's entry point. Arguments as registry:2's entry point takes them:
#   (none)                     dockyard serve /etc/docker/registry/config.yml
#   /path/to/config.yml        dockyard serve /path/to/config.yml
#   garbage-collect CONFIG ... dockyard garbage-collect CONFIG ... (any dockyard command)
#   sh ...                     a shell
# Started as root (the default), it gives /var/lib/registry to the dockyard user, so a
# host directory made by root (`mkdir -p /opt/data/registry`, or a store registry:2
# wrote as root) works as a volume, then drops to that user for good. Started as
# another user (`--user`), it changes nothing and runs as that user.
set -eu

if [ "$#" -eq 0 ]; then
    set -- /etc/docker/registry/config.yml
fi
case "$1" in
    sh|bash)
        exec "$@"
        ;;
    -*)
        set -- dockyard "$@"
        ;;
    *)
        if [ -f "$1" ]; then
            set -- dockyard serve "$@"
        else
            set -- dockyard "$@"
        fi
        ;;
esac

if [ "$(id -u)" = 0 ]; then
    # A store that cannot be changed (mounted :ro) is left as it is, with a warning.
    if [ -d /var/lib/registry ] && ! find /var/lib/registry \( \! -user dockyard -o \! -group dockyard \) \
            -exec chown -h dockyard:dockyard {} + ; then
        echo "docker-entrypoint.sh: could not give all of /var/lib/registry to the dockyard user" >&2
    fi
    exec setpriv --reuid=dockyard --regid=dockyard --init-groups --inh-caps=-all \
        --no-new-privs -- "$@"
fi
exec "$@"
