#!/bin/sh
# up on TCP means initialised: the init pass runs with networking off
exec mariadb-admin --protocol=tcp -h 127.0.0.1 -u root "-p${MARIADB_ROOT_PASSWORD}" status >/dev/null
