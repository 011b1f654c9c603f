"""Files as turn input (images, PDFs): the public names; the code lives in
:mod:`django_agent_session.store.attachments` and :mod:`django_agent_session.declaration.attachments`."""

from .declaration.attachments import AttachmentsField
from .store.attachments import (
    asave_attachment,
    attachments_of,
    check_upload,
    save_attachment,
    sniff,
)

__all__ = ["AttachmentsField", "asave_attachment", "attachments_of", "check_upload",
           "save_attachment", "sniff"]
