"""
Ticket hashing, signatures, the win check, parameters and validation, without a chain.
(The hash is compared with the contract's getTicketHash in test_chain_payments.)
"""

import json
import os
import stat
from fractions import Fraction

import pytest
from eth_account import Account
from eth_utils import keccak
from twisted.internet.task import Clock

from livepeer_tx.chain.payments import TicketPayments
from livepeer_tx.chain.redemption import EXPIRED, REDEEMED, STORE_FILE, PendingTicket, TicketStore
from livepeer_tx.chain.watcher import ChainWatcher

from livepeer_tx.chain.tickets import (
    MAX_WIN_PROB,
    SECP256K1_N,
    SenderInfo,
    Ticket,
    TicketError,
    TicketRecipient,
    bytesInt,
    isWinning,
    loadRecipientKey,
    pad32,
    signTicket,
    verifySignature,
)
from livepeer_tx.secret import SecretFileError

SENDER = Account.from_key(b"\x01" * 32)
OTHER = Account.from_key(b"\x02" * 32)
ORCH = Account.from_key(b"\x03" * 32)
PRICE = Fraction(1000, 3)
FUNDED = SenderInfo(deposit=10**18, withdrawRound=0, reserve=10**18)


def addr(account):
    return bytes.fromhex(account.address[2:])


def makeTicket(recipient, params, nonce=1, sender=SENDER):
    return Ticket.fromParams(params, addr(sender), nonce)


@pytest.fixture
def recipient(tmp_path):
    return TicketRecipient(ORCH.address, loadRecipientKey(str(tmp_path)), ticketEV=1000)


def issue(recipient, faceValue=10**6, winProb=None, block=100):
    winProb = recipient.winProb(faceValue) if winProb is None else winProb
    return recipient.makeParams(addr(SENDER), faceValue, winProb, PRICE, block, 5, b"\x11" * 32)


def validate(recipient, params, ticket, sig, senderInfo=FUNDED, block=100, price=PRICE):
    return recipient.validate(
        ticket, sig, bytes(params.seed), bytesInt(params.expiration_block), price, senderInfo, 5, block
    )


def test_hashPreimage():
    """
    The ticket hash is keccak-256 of the contract's 232-byte preimage in its
    field order; any other layout would make every ticket unredeemable.
    """
    t = Ticket(b"\xaa" * 20, b"\xbb" * 20, 1, 2, 3, b"\xcc" * 32, 7, b"\xdd" * 32)
    preimage = (
        b"\xaa" * 20 + b"\xbb" * 20 + pad32(1) + pad32(2) + pad32(3) + b"\xcc" * 32
        + pad32(7) + b"\xdd" * 32
    )
    assert len(preimage) == 232
    assert t.hash() == keccak(preimage)
    assert Ticket(b"\xaa" * 20, b"\xbb" * 20, 1, 2, 3, b"\xcc" * 32).auxData == b""


def test_signatureRules():
    """
    Only a 65-byte signature by the sender with v 27/28 and a low s
    verifies: other signers, short or long signatures, v 0/1 and the malleable
    high-s twin are refused as the TicketBroker refuses them.
    """
    t = Ticket(addr(ORCH), addr(SENDER), 1, 2, 3, b"\xcc" * 32, 7, b"\xdd" * 32)
    sig = signTicket(SENDER, t)
    assert verifySignature(t.hash(), sig, addr(SENDER))
    assert not verifySignature(t.hash(), sig, addr(OTHER))
    assert not verifySignature(t.hash(), sig[:64], addr(SENDER))
    assert not verifySignature(t.hash(), sig + b"\0", addr(SENDER))
    # v 0/1: eth-account would accept it, the chain does not.
    v01 = sig[:64] + bytes([sig[64] - 27])
    assert Account.recover_message  # the library accepts it; we must not
    assert not verifySignature(t.hash(), v01, addr(SENDER))
    # High s (the malleable twin of a valid signature).
    s = bytesInt(sig[32:64])
    high = sig[:32] + (SECP256K1_N - s).to_bytes(32, "big") + bytes([55 - sig[64]])
    assert not verifySignature(t.hash(), high, addr(SENDER))
    assert not verifySignature(t.hash(), b"\0" * 65, addr(SENDER))


def test_winCheckStrict():
    """
    A ticket wins only when keccak(sig, recipientRand) is strictly below
    winProb, the contract's comparison; an off-by-one would pay losing tickets.
    """
    sig = b"\x05" * 65
    value = bytesInt(keccak(sig + pad32(9)))
    assert not isWinning(sig, 9, value)
    assert isWinning(sig, 9, value + 1)
    assert isWinning(sig, 9, MAX_WIN_PROB) or value == MAX_WIN_PROB


def test_keyPersistsAndIsPrivate(tmp_path):
    """
    The recipient key is kept at 0600 and read back the same after a
    restart; a key file others can read is refused.
    """
    key = loadRecipientKey(str(tmp_path))
    path = tmp_path / "ticket-recipient.key"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert loadRecipientKey(str(tmp_path)) == key
    os.chmod(path, 0o644)
    with pytest.raises(SecretFileError, match="chmod 600"):
        loadRecipientKey(str(tmp_path))
    os.chmod(path, 0o600)
    path.write_bytes(key[:31])
    with pytest.raises(SecretFileError, match="does not hold 32 bytes"):
        loadRecipientKey(str(tmp_path))
    assert path.read_bytes() == key[:31]


def test_paramsSurviveRestart(tmp_path):
    """
    Ticket parameters issued before a restart still validate after it (the
    recipientRand comes from the persisted key).
    """
    first = TicketRecipient(ORCH.address, loadRecipientKey(str(tmp_path)), ticketEV=1000)
    params = issue(first)
    second = TicketRecipient(ORCH.address, loadRecipientKey(str(tmp_path)), ticketEV=1000)
    ticket = makeTicket(second, params)
    won, rand = validate(second, params, ticket, signTicket(SENDER, ticket))
    assert keccak(pad32(rand)) == ticket.recipientRandHash


def test_faceValueAndWinProb(recipient):
    """
    Face value and win probability follow go-livepeer's rules: EV over
    face value, the transaction-cost multiple, the sender's max float and the
    operator's cap, and an insufficient reserve is an error.
    """
    assert recipient.winProb(1000) == MAX_WIN_PROB
    assert recipient.winProb(10**5) == 1000 * -(-MAX_WIN_PROB // 10**5)
    assert recipient.faceValue(txCost=5, maxFloat=10**9) == 1000 * 100
    assert recipient.faceValue(txCost=10**4, maxFloat=10**9) == 10**6
    assert recipient.faceValue(txCost=10**4, maxFloat=5 * 10**5) == 5 * 10**5
    with pytest.raises(TicketError, match="insufficient sender reserve"):
        recipient.faceValue(txCost=5, maxFloat=999)
    recipient.maxFaceValue = 2000
    assert recipient.faceValue(txCost=5, maxFloat=10**9) == 2000


def test_accepted(recipient):
    """
    A valid ticket is accepted, and reported as winning only when its win
    probability says so.
    """
    params = issue(recipient, winProb=MAX_WIN_PROB)
    ticket = makeTicket(recipient, params)
    won, _ = validate(recipient, params, ticket, signTicket(SENDER, ticket))
    assert won
    params = issue(recipient, winProb=0)
    ticket = makeTicket(recipient, params)
    won, _ = validate(recipient, params, ticket, signTicket(SENDER, ticket))
    assert not won


@pytest.mark.parametrize(
    "case, message",
    [
        ("unlockSoon", "is set to unlock soon"),
        ("noFunds", "sender deposit and reserve are zero"),
        ("recipient", "invalid ticket recipient"),
        ("zeroSender", "invalid ticket sender"),
        ("rand", "invalid recipientRand for ticket recipientRandHash"),
        ("price", "invalid recipientRand for ticket recipientRandHash"),
        ("badSig", "invalid ticket signature"),
        ("v01", "invalid ticket signature"),
        ("shortSig", "invalid ticket signature"),
        ("replay", "invalid ticket senderNonce: already seen"),
        ("expired", "TicketParams expired"),
    ],
)
def test_rejections(recipient, case, message):
    """
    Each invalid ticket is refused with go-livepeer's error text, and only
    signature errors are non-fatal (the gateway may retry with a new signature).
    """
    params = issue(recipient)
    ticket = makeTicket(recipient, params)
    sig = signTicket(SENDER, ticket)
    senderInfo, block, price = FUNDED, 100, PRICE
    if case == "unlockSoon":
        senderInfo = SenderInfo(10**18, 6, 10**18)
    elif case == "noFunds":
        senderInfo = SenderInfo(0, 0, 0)
    elif case == "recipient":
        ticket = Ticket(addr(OTHER), *[getattr(ticket, f) for f in (
            "sender", "faceValue", "winProb", "senderNonce", "recipientRandHash",
            "creationRound", "creationRoundBlockHash")])
        sig = signTicket(SENDER, ticket)
    elif case == "zeroSender":
        ticket = Ticket(ticket.recipient, b"\0" * 20, *[getattr(ticket, f) for f in (
            "faceValue", "winProb", "senderNonce", "recipientRandHash",
            "creationRound", "creationRoundBlockHash")])
    elif case == "rand":
        ticket = Ticket(*[getattr(ticket, f) for f in (
            "recipient", "sender", "faceValue", "winProb", "senderNonce")], b"\x01" * 32,
            ticket.creationRound, ticket.creationRoundBlockHash)
        sig = signTicket(SENDER, ticket)
    elif case == "price":
        price = Fraction(1, 1)
    elif case == "badSig":
        sig = signTicket(OTHER, ticket)
    elif case == "v01":
        sig = sig[:64] + bytes([sig[64] - 27])
    elif case == "shortSig":
        sig = sig[:64]
    elif case == "replay":
        validate(recipient, params, ticket, sig)
    elif case == "expired":
        block = bytesInt(params.expiration_block)
    with pytest.raises(TicketError) as caught:
        validate(recipient, params, ticket, sig, senderInfo, block, price)
    assert message in caught.value.message
    assert caught.value.fatal == (case not in ("badSig", "v01", "shortSig"))


def test_idleBalancesExpire(tmp_path):
    """
    Credit balances of sessions idle longer than the TTL are dropped, on
    the clock and on new blocks, while busy sessions keep theirs.
    """
    clock = Clock()
    watcher = ChainWatcher(clock, contracts=None)
    recipient = TicketRecipient(ORCH.address, loadRecipientKey(str(tmp_path)), ticketEV=1000)
    payments = TicketPayments(None, recipient, watcher, None, PRICE, reactor=clock, balanceTTL=600)
    payments.debit("old", 3)
    clock.advance(400)
    payments.debit("busy", 3)
    clock.advance(300)
    assert payments.expireIdleBalances() == 1
    assert set(payments.balances) == {"busy"}
    payments.debit("busy", 3)
    clock.advance(599)
    watcher.lastL1Block = 10
    for listener in watcher._listeners:  # what a watcher poll does
        listener(watcher)
    assert set(payments.balances) == {"busy"}
    clock.advance(2)
    assert payments.expireIdleBalances() == 1
    assert payments.balances == {}


def test_storeCompactedOnStart(tmp_path):
    """
    On start the ticket store drops finished tickets past their retention
    and a torn last line, rewrites the file compactly, and reads back the same.
    """
    clock = Clock()
    clock.advance(10 * 86400)
    params = issue(TicketRecipient(ORCH.address, b"\x05" * 32, ticketEV=1000))
    tickets = [PendingTicket(makeTicket(None, params, nonce=n), b"\x01" * 65, 7, 140) for n in (1, 2, 3)]
    path = tmp_path / STORE_FILE
    records = [t.toRecord() for t in tickets] + [
        {"op": "done", "id": tickets[0].id, "outcome": REDEEMED, "at": 1.0},  # old
        {"op": "done", "id": tickets[1].id, "outcome": EXPIRED, "at": clock.seconds() - 60},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"op": "ad')
    store = TicketStore(clock, str(tmp_path), outcomeRetention=86400)
    assert list(store.pending) == [tickets[2].id]
    assert store.outcomes == {tickets[1].id: EXPIRED}
    kept = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["op"], r["id"]) for r in kept] == [("add", tickets[2].id), ("done", tickets[1].id)]
    again = TicketStore(clock, str(tmp_path), outcomeRetention=86400)
    assert (list(again.pending), again.outcomes) == (list(store.pending), store.outcomes)
    assert path.read_text().splitlines() == [json.dumps(r, sort_keys=True) for r in kept]
