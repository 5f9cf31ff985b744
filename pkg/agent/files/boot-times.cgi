#!/bin/sh
# GET /cgi-bin/boot-times: init's /run/provision/boot-times.json (each boot step and the
# uptime it was reached at), or {"steps": []} before init wrote it.
printf 'Content-Type: application/json\r\nCache-Control: no-store\r\n\r\n'
cat /host/run/provision/boot-times.json 2>/dev/null || echo '{"steps": []}'
