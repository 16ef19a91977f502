from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Response

from notification_service.bootstrap import PreferenceStoreDep
from notification_service.ports import PreferencesUnavailableError
from notification_service.preferences import Preferences
from taskevents.auth import Caller, ensure_may_act_for

UserId = Annotated[str, Path(min_length=1, max_length=200, pattern=r"^[^\s/]+$")]


def preferences_router() -> APIRouter:
    # The user themself or an operator (403 otherwise).
    router = APIRouter(prefix="/preferences", tags=["preferences"])

    @router.get(
        "/{user_id}",
        responses={404: {"description": "no preferences stored"}, 503: {}},
    )
    async def get_preferences(
        user_id: UserId, store: PreferenceStoreDep, caller: Caller
    ) -> Preferences:
        ensure_may_act_for(caller, user_id, "reading the preferences")
        try:
            found = await store.get(user_id)
        except PreferencesUnavailableError as error:
            raise HTTPException(503, f"preferences unavailable: {error}") from error
        if found is None:
            raise HTTPException(404, f"no preferences stored for {user_id!r}")
        return found

    @router.put("/{user_id}", responses={503: {}})
    async def put_preferences(
        user_id: UserId, preferences: Preferences, store: PreferenceStoreDep, caller: Caller
    ) -> Preferences:
        """Replace the user's preferences (fields left out take their defaults)."""
        ensure_may_act_for(caller, user_id, "changing the preferences")
        try:
            await store.put(user_id, preferences)
        except PreferencesUnavailableError as error:
            raise HTTPException(503, f"preferences unavailable: {error}") from error
        return preferences

    @router.delete(
        "/{user_id}",
        status_code=204,
        responses={404: {"description": "no preferences stored"}, 503: {}},
    )
    async def delete_preferences(
        user_id: UserId, store: PreferenceStoreDep, caller: Caller
    ) -> Response:
        ensure_may_act_for(caller, user_id, "deleting the preferences")
        try:
            deleted = await store.delete(user_id)
        except PreferencesUnavailableError as error:
            raise HTTPException(503, f"preferences unavailable: {error}") from error
        if not deleted:
            raise HTTPException(404, f"no preferences stored for {user_id!r}")
        return Response(status_code=204)

    return router
