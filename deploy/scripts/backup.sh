#!/usr/bin/env bash
# Back up llm-proxy's PostgreSQL data (virtual keys with their budgets and spend, usage
# records and their daily roll-ups, the audit log, the migration ledger) as one pg_dump
# custom-format archive.
#
#   DATABASE_URL=postgresql://user@host/db deploy/scripts/backup.sh [-n SCHEMA] [FILE]
#
# -n SCHEMA   only that schema (the proxy's `database.schema`); default: the whole database
# FILE        default: $BACKUP_DIR/llm-proxy-<UTC time>.dump, BACKUP_DIR defaulting to .
# BACKUP_KEEP=N deletes all but the newest N llm-proxy-*.dump files in BACKUP_DIR afterwards.
#
# Prints the archive's path. The archive is written under a temporary name and renamed
# when complete and readable, so a failed run never leaves a file that looks like a backup.
# pg_dump takes one consistent snapshot; the proxy keeps running meanwhile.
set -euo pipefail

usage() {
  sed -n '2,14s/^# \{0,1\}//p' "$0" >&2
  exit 2
}

schema=""
while getopts "n:h" opt; do
  case "$opt" in
    n) schema="$OPTARG" ;;
    *) usage ;;
  esac
done
shift $((OPTIND - 1))
[ $# -le 1 ] || usage

if [ -z "${DATABASE_URL:-}" ]; then
  echo "backup.sh: DATABASE_URL is not set (the proxy's PostgreSQL URL)" >&2
  exit 2
fi
for tool in pg_dump pg_restore; do
  command -v "$tool" >/dev/null || { echo "backup.sh: $tool not found (postgresql-client)" >&2; exit 2; }
done

dir="${BACKUP_DIR:-.}"
file="${1:-$dir/llm-proxy-$(date -u +%Y%m%dT%H%M%SZ).dump}"
partial="$file.partial"
trap 'rm -f "$partial"' EXIT

args=(--format=custom --compress=6 --dbname="$DATABASE_URL" --file="$partial")
[ -z "$schema" ] || args+=(--schema="$schema")
pg_dump "${args[@]}"

# An archive without the proxy's tables means the wrong database or schema: fail loudly.
listing="$(pg_restore --list "$partial")"
for table in virtual_keys usage_records schema_migrations; do
  if ! grep -Eq "TABLE DATA [^ ]+ $table " <<<"$listing"; then
    echo "backup.sh: no table $table in the dump${schema:+ of schema $schema}: wrong database or schema?" >&2
    exit 1
  fi
done
mv "$partial" "$file"
trap - EXIT
echo "$file"

if [ -n "${BACKUP_KEEP:-}" ]; then
  # Newest first; everything after the first BACKUP_KEEP goes.
  find "$dir" -maxdepth 1 -name 'llm-proxy-*.dump' -printf '%T@ %p\n' | sort -rn |
    tail -n +"$((BACKUP_KEEP + 1))" | cut -d' ' -f2- | while IFS= read -r old; do
      rm -f -- "$old"
    done
fi
