#!/bin/sh
case "$1" in
  server|master|volume|filer|s3) exec weed -logtostderr=true "$@" ;;
esac
exec "$@"
