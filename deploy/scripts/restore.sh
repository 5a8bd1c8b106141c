#!/usr/bin/env bash
# Restore an archive made by backup.sh into DATABASE_URL, replacing what is there.
#
#   DATABASE_URL=postgresql://user@host/db deploy/scripts/restore.sh -y FILE
#
# -y          required: the tables in the archive are dropped and recreated in the target
#
# One transaction (pg_restore --single-transaction --exit-on-error): on any error the target
# is left as it was. Objects are owned by DATABASE_URL's user (--no-owner --no-privileges),
# so an archive restores into another server or a managed service. The target database
# must exist (an empty one will do). Stop the proxy's writers first (scale to 0): usage
# written between the backup and the restore is replaced by the archive's.
set -euo pipefail

usage() {
  sed -n '2,12s/^# \{0,1\}//p' "$0" >&2
  exit 2
}

confirmed=""
while getopts "yh" opt; do
  case "$opt" in
    y) confirmed=1 ;;
    *) usage ;;
  esac
done
shift $((OPTIND - 1))
[ $# -eq 1 ] || usage
file="$1"

if [ -z "${DATABASE_URL:-}" ]; then
  echo "restore.sh: DATABASE_URL is not set (the target PostgreSQL URL)" >&2
  exit 2
fi
if [ -z "$confirmed" ]; then
  echo "restore.sh: this replaces the proxy's tables in the target; pass -y to go ahead" >&2
  exit 2
fi
[ -r "$file" ] || { echo "restore.sh: cannot read $file" >&2; exit 2; }
for tool in pg_restore psql; do
  command -v "$tool" >/dev/null || { echo "restore.sh: $tool not found (postgresql-client)" >&2; exit 2; }
done

pg_restore --clean --if-exists --no-owner --no-privileges --single-transaction \
  --exit-on-error --dbname="$DATABASE_URL" "$file"

# What came back, for the log: per schema in the archive, its version and row counts.
pg_restore --list "$file" | awk '$4 == "TABLE" && $5 == "DATA" && $7 == "schema_migrations" { print $6 }' |
  while IFS= read -r schema; do
    psql --dbname="$DATABASE_URL" --no-psqlrc --quiet --tuples-only --no-align \
      --set=ON_ERROR_STOP=1 --set=schema="$schema" <<'SQL'
SELECT format('restored schema %s: version %s, %s keys, %s usage records', :'schema',
              (SELECT max(version) FROM :"schema".schema_migrations),
              (SELECT count(*) FROM :"schema".virtual_keys),
              (SELECT count(*) FROM :"schema".usage_records));
SQL
  done
