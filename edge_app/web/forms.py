"""The tablet's forms (Flask-WTF: each carries its CSRF token)."""

from __future__ import annotations

from flask_babel import lazy_gettext as _l
from flask_wtf import FlaskForm
from wtforms import BooleanField, PasswordField, RadioField, SelectField, StringField, TextAreaField
from wtforms.validators import DataRequired, EqualTo, Length, Regexp

from edge_app.store.accounts import LANGUAGES, MIN_PASSWORD_CHARS, NAME_PATTERN, ROLES
from edge_app.store.reviews import MAX_NOTE_CHARS, STATES

LANGUAGE_NAMES = {"en": "English", "fr": "Français"}

try:  # WTForms 3.3 takes choices as SelectChoice and deprecates tuples; 3.2 (the last on Python 3.10) has none
    from wtforms.fields.choices import SelectChoice as _choice
except ImportError:  # pragma: no cover - Python 3.10 (JetPack 6)

    def _choice(value: str, label: str) -> tuple[str, str]:
        return value, label


class LoginForm(FlaskForm):
    username = StringField(_l("User name"), validators=[DataRequired(), Length(max=64)])
    password = PasswordField(_l("Password"), validators=[DataRequired(), Length(max=1024)])


class NewPasswordMixin:
    password = PasswordField(_l("Password"), validators=[DataRequired(), Length(min=MIN_PASSWORD_CHARS, max=1024)])
    confirm = PasswordField(
        _l("Password again"), validators=[DataRequired(), EqualTo("password", message=_l("The passwords differ."))]
    )


class SetupForm(FlaskForm, NewPasswordMixin):
    username = StringField(_l("User name"), validators=[DataRequired(), Length(max=64)])


_NAME_RULE = Regexp(
    rf"^{NAME_PATTERN}$",
    message=_l("A name is 1 to 64 letters, digits, '.', '_', '@' or '-', starting with a letter or a digit."),
)


class UserForm(FlaskForm, NewPasswordMixin):
    username = StringField(_l("User name"), validators=[DataRequired(), _NAME_RULE])
    clinician = BooleanField(_l("Clinician"))
    technician = BooleanField(_l("Technician"))
    admin = BooleanField(_l("Administrator"))
    language = SelectField(_l("Language"), choices=[_choice(code, LANGUAGE_NAMES[code]) for code in LANGUAGES])

    def roles(self) -> frozenset[str]:
        return frozenset(role for role in ROLES if getattr(self, role).data)

    def validate(self, extra_validators: object = None) -> bool:
        valid: bool = super().validate(extra_validators)
        if not self.roles():
            self.clinician.errors = [*self.clinician.errors, _l("Choose at least one role.")]
            self._errors = None  # WTForms caches `errors`: let it see this one
            return False
        return valid


class TokenForm(FlaskForm):
    name = StringField(_l("Name"), validators=[DataRequired(), _NAME_RULE])
    role = SelectField(_l("Role"), choices=[_choice(role, role) for role in ROLES])


class LanguageForm(FlaskForm):
    language = SelectField(_l("Language"), choices=[_choice(code, LANGUAGE_NAMES[code]) for code in LANGUAGES])


STATE_NAMES = {"read": _l("Read"), "referred": _l("Referred")}


class ReviewForm(FlaskForm):
    """The study read or referred, and the note; the findings disagreed with (`disagree`) are read by the view."""

    state = RadioField(
        _l("The study is"), choices=[_choice(state, STATE_NAMES[state]) for state in STATES], default="read"
    )
    note = TextAreaField(_l("Note"), validators=[Length(max=MAX_NOTE_CHARS)])


class ActionForm(FlaskForm):
    """A button that changes something (log out, disable a user, revoke a token): only its CSRF token."""
