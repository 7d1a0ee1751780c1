"""API keys: random, shown once, stored only as a sha256 (a random 256-bit key needs no slow hash)."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.ids import new_id, now
from service.tables import ApiKey, Tenant

KEY_PREFIX = "drl-"


@dataclass(frozen=True)
class NewKey:
    tenant_id: str
    key_id: str
    key: str


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(session: Session, tenant_name: str) -> NewKey:
    """A new key for `tenant_name`, creating the tenant on first use; the caller commits and shows `key` once."""
    tenant = session.scalar(select(Tenant).where(Tenant.name == tenant_name))
    if tenant is None:
        tenant = Tenant(id=new_id("tenant"), name=tenant_name, created_at=now())
        session.add(tenant)
        session.flush()
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(id=new_id("key"), tenant_id=tenant.id, key_hash=hash_key(key), prefix=key[:8], created_at=now())
    session.add(row)
    return NewKey(tenant_id=tenant.id, key_id=row.id, key=key)


def tenant_for_key(session: Session, key: str) -> Tenant | None:
    row = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(key), ApiKey.revoked_at.is_(None)))
    return None if row is None else session.get(Tenant, row.tenant_id)


def revoke_key(session: Session, key_id: str) -> bool:
    row = session.get(ApiKey, key_id)
    if row is None or row.revoked_at is not None:
        return False
    row.revoked_at = now()
    return True
