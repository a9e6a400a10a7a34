from __future__ import annotations

import json
import stat


def test_the_demo_users_password_is_generated_once_and_kept_private(tmp_path):
    from modelops.local.demo_chat import DEMO_USER, demo_user_password

    first = demo_user_password(tmp_path)
    path = tmp_path / "config" / "openwebui-demo-user.json"
    assert len(first) >= 16 and demo_user_password(tmp_path) == first
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text()) == {"email": DEMO_USER, "password": first}
    path.write_text("not json")  # unreadable: a new one replaces it
    assert demo_user_password(tmp_path) not in ("", first)
