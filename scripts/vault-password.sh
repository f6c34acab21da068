#!/usr/bin/env bash
# ansible-vault password client script: prints the password of the files encrypted in this repository.
# The password never lives in the repository. It comes from the file named by $XL_VAULT_PASSWORD_FILE (mode 0600,
# outside the checkout), else from $XL_VAULT_PASSWORD. Use it only where encrypted files are read:
#   ansible-playbook --vault-password-file scripts/vault-password.sh ...
#   XL_VAULT_PASSWORD_FILE=~/.config/xlerobot/vault-password ansible-vault edit config/secrets/files/x.vault
# ansible.cfg does not name it, so runs that read no encrypted file need no password at all.
set -euo pipefail
if [ -n "${XL_VAULT_PASSWORD_FILE:-}" ]; then
  if [ ! -r "$XL_VAULT_PASSWORD_FILE" ]; then
    echo "vault-password.sh: cannot read \$XL_VAULT_PASSWORD_FILE ($XL_VAULT_PASSWORD_FILE)" >&2
    exit 1
  fi
  head -n 1 -- "$XL_VAULT_PASSWORD_FILE"
elif [ -n "${XL_VAULT_PASSWORD:-}" ]; then
  printf '%s\n' "$XL_VAULT_PASSWORD"
else
  echo "vault-password.sh: no ansible-vault password; set XL_VAULT_PASSWORD_FILE (a 0600 file) or XL_VAULT_PASSWORD" >&2
  exit 1
fi
