"""Word lists and sentence templates for the synthetic ``tiny-llama`` corpus.

Everything here is invented: company names, brands, people (first/last names are common
given names combined at random, e-mail domains are the reserved ``example.*`` ones).
Lists are plain tuples (never sets) so that iteration order — and hence the corpus — is
stable across Python processes regardless of ``PYTHONHASHSEED``.

``|`` separates entries inside the triple-quoted blocks; see :func:`_w`.
"""

from __future__ import annotations


def _w(block: str) -> tuple[str, ...]:
    """Split a ``|``-separated block into stripped, non-empty entries (order kept)."""
    return tuple(" ".join(part.split()) for part in block.split("|") if part.strip())


def _pairs(block: str) -> tuple[tuple[str, str], ...]:
    """Parse ``english = german`` entries of a ``|``-separated block into pairs."""
    out = []
    for entry in _w(block):
        en, de = entry.split(" = ")
        out.append((en.strip(), de.strip()))
    return tuple(out)


FIRST_NAMES = _w("""
Anna|Ben|Clara|David|Elena|Felix|Greta|Hannah|Ivan|Julia|Karim|Lena|Marco|Nina|Oskar|Paula|
Quentin|Rosa|Samir|Tina|Uwe|Vera|Walter|Xenia|Yusuf|Zoe|Amelie|Bruno|Carla|Dominik|Emma|
Fabian|Gisela|Henrik|Ines|Jonas|Katrin|Lukas|Mila|Noah|Olga|Peter|Rita|Sven|Theo|Ursula|
Viktor|Wiebke|Aylin|Bernd|Chiara|Dennis|Esra|Frieda|Georg|Helga|Ida|Jan|Kerstin|Leon|
Marie|Nils|Ole|Pia|Ralf|Sophie|Timo|Ulla|Vincent|Willi|Liam|Olivia|James|Ava|Lucas|Mia|
Ethan|Grace|Oliver|Chloe|Daniel|Ruby|Samuel|Isla|Jack|Freya|Harry|Alice|Omar|Priya|Raj|
Mei|Kenji|Sara|Tomas|Laura
""")

LAST_NAMES = _w("""
Albers|Brandt|Conrad|Dietz|Ebert|Falk|Gerber|Hahn|Imhof|Jansen|Keller|Lorenz|Maurer|Nolte|
Otto|Pohl|Quast|Roth|Seidel|Thiel|Ulrich|Vogt|Winter|Zander|Arnold|Busch|Claasen|Dreyer|
Engel|Fuchs|Graf|Hartmann|Kraus|Lange|Marx|Neumann|Peters|Rieger|Sommer|Brooks|Carter|
Dawson|Ellis|Fletcher|Gray|Hughes|Irving|Jennings|Kemp|Lawson|Mercer|Norris|Owens|Porter|
Reid|Shaw|Turner|Walsh|Young|Okafor|Novak|Rossi|Silva|Kowalski|Yilmaz|Nakamura|Lindqvist
""")

COMPANY_STEMS = _w("""
Nordwind|Bluepeak|Silberfluss|Greenbridge|Lumen|Falkenstein|Brightwave|Eichenhof|Northgate|
Sonnental|Ironleaf|Kupferberg|Clearpath|Weidenau|Redstone|Seeblick|Oakridge|Morgenrot|
Quickfern|Talhaus|Stormvale|Rheinblick|Pinecrest|Adlerhorst|Sunfield|Bergquell|Westbrook|
Fjordlicht|Harbor Lane|Lindenhof|Crescent|Grauwacke|Meadowline|Sternwarte|Copperfield|
Waldmeister|Riverside|Hochland|Summit|Tannenberg
""")

COMPANY_SUFFIXES = _w(
    "GmbH|AG|Ltd|Inc.|KG|Logistics|Systems|Consulting|Retail|Foods|Labs|GmbH & Co. KG"
)

SELF_COMPANY = "Tunefleet"

BRANDS = _w("""
Nimbus|Kestrel|Aurora|Vireo|Polaris|Zephyr|Orca|Fenix|Lyra|Tundra|Cobalt|Helix|Quasar|Sable|
Ember|Nova|Atlas|Juniper|Vektor|Solis|Arktis|Borealis|Corvid|Delta|Echo|Flint|Garnet|Halcyon
""")

MODELS = _w("X1|X2|S3|Pro|Mini|Max|Air|Plus|200|310|Lite|One|Go|Studio|Ultra|Neo|7|9|Duo|Flex")

# (english noun, German gender m/f/n, German noun)
PRODUCT_NOUNS: tuple[tuple[str, str, str], ...] = tuple(
    (en, g, de)
    for en, g, de in (
        entry.split(":")
        for entry in _w("""
router:m:Router|wireless headset:n:Headset|standing desk:m:Schreibtisch|coffee
machine:f:Kaffeemaschine|
office chair:m:Bürostuhl|laptop stand:m:Laptopständer|webcam:f:Webcam|monitor:m:Monitor|
keyboard:f:Tastatur|mouse:f:Maus|printer:m:Drucker|smartwatch:f:Smartwatch|tablet:n:Tablet|
power bank:f:Powerbank|desk lamp:f:Schreibtischlampe|speaker:m:Lautsprecher|air
purifier:m:Luftreiniger|
electric kettle:m:Wasserkocher|backpack:m:Rucksack|water bottle:f:Trinkflasche|label
printer:m:Etikettendrucker|
barcode scanner:m:Barcodescanner|docking station:f:Dockingstation|USB hub:m:USB-Hub|
noise cancelling headphones:m:Kopfhörer|vacuum robot:m:Saugroboter|thermostat:n:Thermostat|
security camera:f:Überwachungskamera|e-bike battery:m:E-Bike-Akku|running shoes:m:Laufschuh|
winter jacket:f:Winterjacke|blender:m:Mixer|toaster:m:Toaster|fitness tracker:m:Fitnesstracker|
phone case:f:Handyhülle|charging cable:n:Ladekabel|external
SSD:f:SSD-Festplatte|microphone:n:Mikrofon|
projector:m:Beamer|whiteboard:n:Whiteboard|paper shredder:m:Aktenvernichter|cash
drawer:f:Kassenlade|
receipt printer:m:Bondrucker|smart plug:m:Zwischenstecker|LED panel:n:LED-Panel|ergonomic
footrest:f:Fußstütze
""")
    )
)

APPS = _w("""
web dashboard|mobile app|desktop client|customer portal|admin console|reporting module|
invoice center|partner portal|shop backend|analytics view|ticket inbox|calendar sync
""")

APPS_DE = _w("""
das Web-Dashboard|die mobile App|der Desktop-Client|das Kundenportal|die Admin-Konsole|
das Reporting-Modul|das Rechnungscenter|das Partnerportal|das Shop-Backend|die Analyseansicht|
der Ticket-Posteingang|die Kalendersynchronisierung
""")

PLANS = _w("Starter|Basic|Pro|Team|Business|Business Plus|Enterprise|Premium|Growth|Scale")

CARRIERS = _w("""
SwiftPost|ParcelNorth|Bluebird Express|Rheinkurier|CityDrop|EuroFreight|Paketblitz|
Northstar Couriers|Alpenlogistik|QuickShip
""")

CITIES = _w("""
Berlin|Hamburg|Munich|Cologne|Frankfurt|Stuttgart|Leipzig|Dresden|Bremen|Hanover|Nuremberg|
Vienna|Graz|Zurich|Basel|Bern|London|Manchester|Leeds|Bristol|Dublin|Amsterdam|Rotterdam|
Copenhagen|Oslo|Stockholm|Prague|Warsaw|Lyon|Milan|Madrid|Lisbon|Edinburgh|Glasgow|Bonn|
Freiburg|Kiel|Mainz|Augsburg|Salzburg|Lucerne|Antwerp|Ghent|Aarhus|Brno|Krakow
""")

COUNTRIES = _pairs("""
Germany = Deutschland|Austria = Österreich|Switzerland = die Schweiz|France = Frankreich|
Italy = Italien|Spain = Spanien|the Netherlands = die Niederlande|Belgium = Belgien|
Poland = Polen|Denmark = Dänemark|Sweden = Schweden|Norway = Norwegen|Ireland = Irland|
the United Kingdom = das Vereinigte Königreich|Portugal = Portugal|Czechia = Tschechien
""")

MONTHS = _pairs("""
January = Januar|February = Februar|March = März|April = April|May = Mai|June = Juni|
July = Juli|August = August|September = September|October = Oktober|November = November|
December = Dezember
""")

WEEKDAYS = _pairs("""
Monday = Montag|Tuesday = Dienstag|Wednesday = Mittwoch|Thursday = Donnerstag|
Friday = Freitag|Saturday = Samstag|Sunday = Sonntag
""")

DURATIONS = _pairs("""
two hours = zwei Stunden|three days = drei Tagen|about an hour = etwa einer Stunde|
the whole weekend = dem ganzen Wochenende|forty minutes = vierzig Minuten|a week = einer Woche|
five days = fünf Tagen|ten minutes = zehn Minuten|half a day = einem halben Tag
""")

ERRORS = _w("""
error 500|error 502|error 503|a gateway timeout|a blank white page|an endless spinner|
"connection refused"|"session expired"|error code E-1042|"unknown error"|a 404 page|
"service unavailable"|a certificate warning|"too many requests"
""")

PAYMENT_METHODS = _pairs("""
credit card = Kreditkarte|PayPal = PayPal|SEPA direct debit = SEPA-Lastschrift|
bank transfer = Überweisung|invoice = Rechnung|debit card = Debitkarte
""")

DEVICES = _w(
    "Android phone|iPad|Windows laptop|MacBook|Linux workstation|Chromebook|smart TV|tablet"
)

FORMATS = _w("CSV|Excel|PDF|JSON|XML|DATEV")

# (english feature, German feature) for feature requests
FEATURES = _pairs("""
a dark mode = einen Dunkelmodus|CSV export for all reports = einen CSV-Export für alle Berichte|
single sign-on with our identity provider = Single Sign-on mit unserem Identity Provider|
a German translation of the mobile app = eine deutsche Übersetzung der mobilen App|
bulk editing of orders = die Massenbearbeitung von Bestellungen|
custom fields on customer records = benutzerdefinierte Felder in Kundendatensätzen|
scheduled email reports = geplante E-Mail-Berichte|an audit log for admins = ein Audit-Log für
Admins|
keyboard shortcuts = Tastenkürzel|a public API for invoices = eine öffentliche API für Rechnungen|
webhooks for shipping updates = Webhooks für Versandupdates|two-factor login via app = eine
Zwei-Faktor-Anmeldung per App|
recurring invoices = wiederkehrende Rechnungen|a Slack integration = eine Slack-Integration|
offline mode for the app = einen Offline-Modus für die App|multi-currency pricing = Preise in
mehreren Währungen|
role-based permissions = rollenbasierte Berechtigungen|a calendar view for deliveries = eine
Kalenderansicht für Lieferungen|
saved search filters = gespeicherte Suchfilter|QR codes on invoices = QR-Codes auf Rechnungen|
an undo button = eine Rückgängig-Schaltfläche|larger file uploads = größere Datei-Uploads|
a read-only guest role = eine Gastrolle mit Lesezugriff|automatic backups = automatische Backups
""")

ROLES = _pairs("""
head of procurement = Leiterin Einkauf|IT manager = IT-Leiter|CFO = Finanzvorstand|
office manager = Office-Managerin|operations lead = Leiter Operations|founder = Gründerin|
purchasing agent = Einkäufer|team lead support = Teamleiterin Support|CTO = technischer Leiter|
logistics coordinator = Logistikkoordinator|marketing director = Marketingleiterin
""")

CRM_TOPICS = _pairs("""
renewal of the annual contract = Verlängerung des Jahresvertrags|
an upgrade to the Enterprise plan = ein Upgrade auf den Enterprise-Tarif|
volume discount for 200 seats = Mengenrabatt für 200 Lizenzen|
the delayed rollout in their warehouse = die verzögerte Einführung in ihrem Lager|
integration with their ERP system = die Anbindung an ihr ERP-System|
open invoices from last quarter = offene Rechnungen aus dem letzten Quartal|
a pilot project for the sales team = ein Pilotprojekt für den Vertrieb|
complaints about slow delivery = Beschwerden über langsame Lieferung|
training for new employees = Schulung für neue Mitarbeitende|
data protection questions = Fragen zum Datenschutz|
a price increase next year = eine Preiserhöhung im nächsten Jahr|
expansion to a second location = die Erweiterung auf einen zweiten Standort
""")

NEXT_STEPS = _pairs("""
send a revised quote = ein überarbeitetes Angebot senden|schedule a demo = eine Demo vereinbaren|
follow up by phone = telefonisch nachfassen|share the security whitepaper = das
Sicherheits-Whitepaper schicken|
prepare the contract draft = den Vertragsentwurf vorbereiten|involve the technical team = das
Technikteam einbinden|
check the open invoices = die offenen Rechnungen prüfen|book an onsite visit = einen Vor-Ort-Termin
buchen|
send reference customers = Referenzkunden nennen|confirm the delivery date = den Liefertermin
bestätigen
""")

CRM_OUTCOMES = _w("""
Customer is interested but needs budget approval.|Very positive call, decision expected soon.|
They compare us with two competitors.|Main concern is price.|Main concern is data protection.|
Contact is new in the role and wants a short onboarding.|They are unhappy with recent outages.|
Ready to sign if the discount is approved.|No decision before next quarter.|
Champion on their side, but procurement is slow.
""")

CRM_OUTCOMES_DE = _w("""
Kunde ist interessiert, braucht aber eine Budgetfreigabe.|Sehr positives Gespräch, Entscheidung
bald erwartet.|
Sie vergleichen uns mit zwei Wettbewerbern.|Hauptthema ist der Preis.|Hauptthema ist der
Datenschutz.|
Ansprechpartnerin ist neu in der Rolle und wünscht ein kurzes Onboarding.|
Unzufrieden mit den Ausfällen der letzten Wochen.|Unterschrift möglich, wenn der Rabatt genehmigt
wird.|
Keine Entscheidung vor dem nächsten Quartal.|Unterstützer im Haus, aber der Einkauf ist langsam.
""")

GREETINGS_EN = _w("""
Hello,|Hi,|Hi team,|Dear support team,|Good morning,|Hello support,|Dear Sir or Madam,|Hey there,
""")
GREETINGS_DE = _w("""
Hallo,|Guten Tag,|Hallo zusammen,|Sehr geehrte Damen und Herren,|
Liebes Support-Team,|Moin,|Guten Morgen,
""")
CLOSINGS_EN = _w(
    "Thanks,|Thank you,|Best regards,|Kind regards,|Cheers,|Many thanks in advance,|Regards,"
)
CLOSINGS_DE = _w(
    "Danke,|Vielen Dank,|Viele Grüße,|Mit freundlichen Grüßen,|Beste Grüße,|Danke im Voraus,|LG,"
)
URGENCY_EN = _w("""
This is urgent.|Please help as soon as possible.|We need this fixed today.|No rush, but please let
me know.|
This is the second time I am writing about this.|Our whole team is blocked.|Thank you for your
help.|
Can you give me an update by tomorrow?|I have attached a screenshot.|
""")
URGENCY_DE = _w("""
Das ist dringend.|Bitte helfen Sie so schnell wie möglich.|Wir brauchen heute eine Lösung.|
Keine Eile, aber bitte melden Sie sich.|Ich schreibe deswegen schon zum zweiten Mal.|
Unser ganzes Team ist blockiert.|Danke für Ihre Hilfe.|Einen Screenshot habe ich angehängt.
""")
AGENT_REPLIES_EN = _w("""
Thank you for reaching out. We have forwarded your request to the responsible team.|
Sorry for the inconvenience. I have corrected this and you will receive a confirmation email
shortly.|
Thanks for your patience. Our engineers are already working on a fix.|
I have checked your account and everything looks correct now. Please try again.|
We have issued a credit note, which you will find in the invoice center.|
Could you please send us the order number so we can look into this?|
Good news: this is on our roadmap for the next quarter.
""")
AGENT_REPLIES_DE = _w("""
Vielen Dank für Ihre Nachricht. Wir haben Ihr Anliegen an das zuständige Team weitergeleitet.|
Entschuldigen Sie bitte die Unannehmlichkeiten. Ich habe das korrigiert, Sie erhalten gleich eine
Bestätigung.|
Danke für Ihre Geduld. Unsere Technik arbeitet bereits an einer Lösung.|
Ich habe Ihr Konto geprüft, jetzt sollte alles wieder funktionieren.|
Wir haben eine Gutschrift erstellt, Sie finden sie im Rechnungscenter.|
Könnten Sie uns bitte die Bestellnummer schicken, damit wir das prüfen können?|
Gute Nachricht: Das steht für das nächste Quartal auf unserer Roadmap.
""")

# Review building blocks: {product} is an English product name; German uses {p_nom}/{P_nom}.
REVIEW_POS_EN = _w("""
Battery life is excellent, it easily lasts a week.|Setup took less than five minutes.|
The build quality feels solid and premium.|Sound quality is crisp and clear.|
Delivery was fast and the packaging was perfect.|It works exactly as described.|
Great value for the price.|Customer service answered within an hour.|
The design looks great on my desk.|It is very quiet, I barely notice it.|
The app is intuitive and stable.|I use it every day and I love it.|
Much better than my old one.|The instructions were clear and easy to follow.|
It arrived a day earlier than expected.|Highly recommended for home offices.
""")
REVIEW_NEG_EN = _w("""
It stopped working after two weeks.|The battery drains in a few hours.|
Delivery took almost a month.|The box was damaged and parts were missing.|
Customer service never replied to my emails.|It feels cheap and flimsy.|
The app crashes constantly.|It is far too loud.|The description was misleading.|
I had to return it and I am still waiting for my refund.|Setup was a nightmare.|
The colour looks nothing like the photos.|Way too expensive for what you get.|
The connection drops all the time.|Do not buy this.|A complete waste of money.
""")
REVIEW_NEU_EN = _w("""
It does what it says, nothing more.|Delivery was on time.|The price is okay.|
Average quality for the price.|Setup was fine, a bit slow.|It is okay for occasional use.|
Some features are good, others are missing.|The design is plain but functional.|
I expected a little more, but it is not bad.|Battery life is acceptable.|
Works as expected so far.|Hard to say after one week.
""")
REVIEW_POS_DE = _w("""
Der Akku hält locker eine Woche.|Die Einrichtung hat keine fünf Minuten gedauert.|
Die Verarbeitung ist hochwertig und stabil.|Der Klang ist klar und sauber.|
Die Lieferung war schnell und gut verpackt.|Funktioniert genau wie beschrieben.|
Super Preis-Leistungs-Verhältnis.|Der Kundenservice hat innerhalb einer Stunde geantwortet.|
Sieht auf dem Schreibtisch richtig gut aus.|Sehr leise, man hört fast nichts.|
Die App ist übersichtlich und stabil.|Ich benutze es jeden Tag und bin begeistert.|
Viel besser als mein altes Gerät.|Die Anleitung ist klar und verständlich.|
Klare Kaufempfehlung fürs Homeoffice.|Kam einen Tag früher als angekündigt.
""")
REVIEW_NEG_DE = _w("""
Nach zwei Wochen ging es kaputt.|Der Akku ist nach wenigen Stunden leer.|
Die Lieferung hat fast einen Monat gedauert.|Der Karton war beschädigt und Teile fehlten.|
Der Kundenservice hat nie geantwortet.|Fühlt sich billig und wackelig an.|
Die App stürzt ständig ab.|Viel zu laut.|Die Beschreibung war irreführend.|
Ich musste es zurückschicken und warte immer noch auf mein Geld.|Die Einrichtung war eine
Katastrophe.|
Die Farbe sieht ganz anders aus als auf den Fotos.|Viel zu teuer für das, was man bekommt.|
Die Verbindung bricht ständig ab.|Finger weg!|Rausgeschmissenes Geld.
""")
REVIEW_NEU_DE = _w("""
Erfüllt seinen Zweck, mehr nicht.|Die Lieferung kam pünktlich.|Der Preis ist in Ordnung.|
Durchschnittliche Qualität für den Preis.|Die Einrichtung war okay, etwas langsam.|
Für gelegentliche Nutzung ganz okay.|Manche Funktionen sind gut, andere fehlen.|
Schlichtes Design, aber funktional.|Ich hatte etwas mehr erwartet, aber schlecht ist es nicht.|
Die Akkulaufzeit ist akzeptabel.|Bisher funktioniert es wie erwartet.|Nach einer Woche schwer zu
sagen.
""")

# Short EN↔DE parallel sentences (fixed pairs; templated pairs live in corpus.py).
PARALLEL = _pairs("""
Your order has been shipped. = Ihre Bestellung wurde versendet.|
Thank you for your purchase. = Vielen Dank für Ihren Einkauf.|
The invoice is attached to this email. = Die Rechnung ist dieser E-Mail beigefügt.|
We have received your payment. = Wir haben Ihre Zahlung erhalten.|
Your refund has been processed. = Ihre Rückerstattung wurde bearbeitet.|
Please check your spam folder. = Bitte prüfen Sie Ihren Spam-Ordner.|
The service is available again. = Der Dienst ist wieder verfügbar.|
We apologize for the inconvenience. = Wir entschuldigen uns für die Unannehmlichkeiten.|
Your password has been reset. = Ihr Passwort wurde zurückgesetzt.|
The package was delivered to your neighbour. = Das Paket wurde bei Ihrem Nachbarn abgegeben.|
Please enter your customer number. = Bitte geben Sie Ihre Kundennummer ein.|
The meeting has been moved to next week. = Das Meeting wurde auf nächste Woche verschoben.|
Payment is due within thirty days. = Die Zahlung ist innerhalb von dreißig Tagen fällig.|
We are working on a solution. = Wir arbeiten an einer Lösung.|
Your subscription will renew automatically. = Ihr Abonnement verlängert sich automatisch.|
The item is currently out of stock. = Der Artikel ist derzeit nicht vorrätig.|
Can I change my delivery address? = Kann ich meine Lieferadresse ändern?|
My account has been locked. = Mein Konto wurde gesperrt.|
The app does not start anymore. = Die App startet nicht mehr.|
I was charged twice. = Mir wurde der Betrag doppelt berechnet.|
I would like to cancel my order. = Ich möchte meine Bestellung stornieren.|
When will my parcel arrive? = Wann kommt mein Paket an?|
The product arrived damaged. = Das Produkt kam beschädigt an.|
Please send me a new invoice. = Bitte senden Sie mir eine neue Rechnung.|
The website is very slow today. = Die Webseite ist heute sehr langsam.|
We would like to order more licences. = Wir möchten weitere Lizenzen bestellen.|
The price includes VAT. = Der Preis enthält die Mehrwertsteuer.|
Shipping is free for orders over fifty euros. = Der Versand ist ab fünfzig Euro kostenlos.|
Our support team is available from Monday to Friday. = Unser Support-Team ist von Montag bis
Freitag erreichbar.|
Please restart the device and try again. = Bitte starten Sie das Gerät neu und versuchen Sie es
erneut.|
The update will be installed tonight. = Das Update wird heute Nacht installiert.|
I cannot log in. = Ich kann mich nicht anmelden.|
The discount code is invalid. = Der Rabattcode ist ungültig.|
We have extended your trial by two weeks. = Wir haben Ihre Testphase um zwei Wochen verlängert.|
The contract ends at the end of the year. = Der Vertrag endet zum Jahresende.|
Thank you for your feedback. = Vielen Dank für Ihr Feedback.|
Your ticket has been closed. = Ihr Ticket wurde geschlossen.|
The delivery is delayed by two days. = Die Lieferung verzögert sich um zwei Tage.|
Please confirm your email address. = Bitte bestätigen Sie Ihre E-Mail-Adresse.|
The report is ready for download. = Der Bericht steht zum Download bereit.|
We will call you back tomorrow. = Wir rufen Sie morgen zurück.|
The new feature is now available. = Die neue Funktion ist jetzt verfügbar.|
The warehouse is closed on public holidays. = Das Lager ist an Feiertagen geschlossen.|
I love this product. = Ich liebe dieses Produkt.|
The quality is disappointing. = Die Qualität ist enttäuschend.|
It works well. = Es funktioniert gut.|
The battery does not last long. = Der Akku hält nicht lange.|
How much does the upgrade cost? = Was kostet das Upgrade?|
The order number is missing. = Die Bestellnummer fehlt.|
Good morning, how can I help you? = Guten Morgen, wie kann ich Ihnen helfen?
""")

# Templated parallel pairs: slots {n} (digit), {day_en}/{day_de}, {month_en}/{month_de},
# {city}, {hour}. Only slots whose German form never needs agreement.
PARALLEL_TEMPLATES = _pairs("""
Your parcel will arrive on {day_en}. = Ihr Paket kommt am {day_de} an.|
The invoice is due on {d} {month_en}. = Die Rechnung ist am {d}. {month_de} fällig.|
We will ship your order on {day_en}. = Wir versenden Ihre Bestellung am {day_de}.|
The outage lasted {n} minutes. = Der Ausfall dauerte {n} Minuten.|
You have {n} unread messages. = Sie haben {n} ungelesene Nachrichten.|
Our office in {city} opens at {hour} o'clock. = Unser Büro in {city} öffnet um {hour} Uhr.|
The meeting starts at {hour} o'clock on {day_en}. = Das Meeting beginnt am {day_de} um {hour} Uhr.|
Delivery to {city} takes {n} days. = Die Lieferung nach {city} dauert {n} Tage.|
We need {n} more licences. = Wir brauchen {n} weitere Lizenzen.|
The warehouse in {city} is closed on {day_en}. = Das Lager in {city} ist am {day_de} geschlossen.|
Your contract started in {month_en}. = Ihr Vertrag hat im {month_de} begonnen.|
The price rises by {n} percent in {month_en}. = Der Preis steigt im {month_de} um {n} Prozent.
""")

ORDER_EN = _w("""
Order {order} for {n} x {product} was shipped on {date} via {carrier}.|
Invoice {invoice}: total {amount}, due on {date}, payment terms net 30.|
Order confirmation: {n} x {product} at {amount} each, delivery to {city}.|
Credit note for invoice {invoice}: {amount} has been refunded to your {payment}.|
Payment reminder: invoice {invoice} over {amount} is overdue since {date}.|
Quote for {company}: {m} licences of the {plan} plan, {amount} per month.|
Purchase order PO-{po} from {company}: {n} units of {product}, requested delivery {date}.|
Your order {order} is ready for pickup at our warehouse in {city}.|
Delivery note for order {order}: {n} parcels, tracking number {tracking}.
""")
ORDER_DE = _w("""
Bestellung {order} über {n} x {product} wurde am {date_de} mit {carrier} versendet.|
Rechnung {invoice}: Gesamtbetrag {amount_de}, fällig am {date_de}, zahlbar in 30 Tagen.|
Auftragsbestätigung: {n} x {product} zu je {amount_de}, Lieferung nach {city}.|
Gutschrift zur Rechnung {invoice}: {amount_de} wurden per {payment_de} erstattet.|
Zahlungserinnerung: Die Rechnung {invoice} über {amount_de} ist seit dem {date_de} überfällig.|
Angebot für {company}: {m} Lizenzen im {plan}-Tarif, {amount_de} pro Monat.|
Bestellung PO-{po} von {company}: {n} Stück {product}, Wunschtermin {date_de}.|
Lieferschein zu Bestellung {order}: {n} Pakete, Sendungsnummer {tracking}.
""")


# Indices into AGENT_REPLIES_* that fit each ticket category.
REPLY_FOR_CATEGORY: dict[str, tuple[int, ...]] = {
    "billing": (0, 1, 4),
    "technical": (0, 2, 3),
    "account": (0, 1, 3),
    "shipping": (0, 5),
    "refund": (0, 4, 5),
    "feature_request": (0, 6),
}
